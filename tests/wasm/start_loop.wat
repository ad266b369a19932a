;; A skill whose start function never returns: it runs while the module is
;; instantiated, before any export is called. The load must time out, not wedge.
(module
  (memory (export "memory") 1)
  (func (export "airlock_abi_version") (result i32) (i32.const 1))
  (func (export "airlock_alloc") (param i32) (result i32) (i32.const 16))
  (func (export "run") (param i32 i32) (result i32) (i32.const 0))
  (func $forever (loop $l (br $l)))
  (start $forever))
