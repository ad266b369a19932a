;; Exports asyncify's names without its instrumentation: the unwind functions are
;; stubs, so an import that "suspends" simply returns and run() goes on calling. Calls
;; airlock.call (input "call") or airlock.wait (input "wait") up to 1,000,000 times.
(module
  (import "airlock" "call" (func $call (param i32 i32 i32 i32) (result i32)))
  (import "airlock" "wait" (func $wait (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "svc")
  (func (export "airlock_abi_version") (result i32) (i32.const 1))
  (func (export "airlock_alloc") (param i32) (result i32) (i32.const 256))
  (func (export "airlock_async_buffer") (result i32) (i32.const 1024))
  (func (export "asyncify_start_unwind") (param i32))
  (func (export "asyncify_stop_unwind"))
  (func (export "asyncify_start_rewind") (param i32))
  (func (export "asyncify_stop_rewind"))
  (func (export "run") (param $ptr i32) (param $len i32) (result i32)
    (local $i i32)
    (loop $l
      (if (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 0x77))  ;; 'w'
        (then (drop (call $wait (i32.const 100000))))
        (else (drop (call $call (i32.const 64) (i32.const 3) (i32.const 64) (i32.const 3)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))
    (i32.const 0)))
