;; A valid skill except that it imports airlock.no_such_function, which the runtime
;; does not provide: loading must fail and name that import.
(module
  (import "airlock" "no_such_function" (func $nope (param i32 i32)))
  (import "airlock" "output" (func $output (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "airlock_abi_version") (result i32) (i32.const 1))
  (func (export "airlock_alloc") (param i32) (result i32) (i32.const 16))
  (func (export "run") (param $ptr i32) (param $len i32) (result i32)
    (call $nope (local.get $ptr) (local.get $len))
    (call $output (local.get $ptr) (local.get $len))
    (i32.const 0)))
