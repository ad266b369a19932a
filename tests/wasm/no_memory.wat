;; A skill whose memory is not exported (it has one, internally): loading must fail
;; because `memory` is missing.
(module
  (import "airlock" "output" (func $output (param i32 i32)))
  (memory 1)
  (func (export "airlock_abi_version") (result i32) (i32.const 1))
  (func (export "airlock_alloc") (param i32) (result i32) (i32.const 16))
  (func (export "run") (param $ptr i32) (param $len i32) (result i32)
    (call $output (local.get $ptr) (local.get $len))
    (i32.const 0)))
