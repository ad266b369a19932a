;; A valid skill whose `run` has type (i32) -> i32 instead of (i32, i32) -> i32: it
;; loads, but calling `run` must fail with InvalidArgument.
(module
  (import "airlock" "output" (func $output (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "airlock_abi_version") (result i32) (i32.const 1))
  (func (export "airlock_alloc") (param i32) (result i32) (i32.const 16))
  (func (export "run") (param $ptr i32) (result i32)
    (call $output (local.get $ptr) (i32.const 0))
    (i32.const 0)))
