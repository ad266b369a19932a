;; A valid WebAssembly module with memory, airlock_alloc and run, but no
;; airlock_abi_version export: loading must refuse it as not an Airlock skill.
(module
  (memory (export "memory") 1)
  (func (export "airlock_alloc") (param i32) (result i32) (i32.const 16))
  (func (export "run") (param $ptr i32) (param $len i32) (result i32) (i32.const 0))
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1))))
