;; A 10,000,000-entry table: ~80 MB of V8 heap per instance.
(module
  (table 10000000 funcref)
  (memory (export "memory") 1)
  (func (export "airlock_abi_version") (result i32) (i32.const 1))
  (func (export "airlock_alloc") (param i32) (result i32) (i32.const 16))
  (func (export "run") (param i32 i32) (result i32) (i32.const 0)))
