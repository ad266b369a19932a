;; A skill that tries to carry state across calls through a mapped input: `run`
;; outputs 4 bytes, [first input byte, the byte just past the input, its own call
;; count (a static at address 8, 1 on a fresh state), the last byte of memory], then
;; writes 0xAA over the first and last input bytes, the byte past them and the last
;; byte of memory, and bumps the count. Fresh state means every call sees count 1,
;; zero past its input and at the end of memory, and its caller's buffer unchanged
;; (the writes land in private copies).
;; `look` leaves the input alone: it outputs [first input byte, last input byte, count,
;; last byte of memory] and then writes 0xAA only past the input's pages (the last byte
;; of memory, the end of the window) and bumps the count; a window kept for the next
;; call must still show that call zero there and count 1.
;; `fill` writes into its input from outside wasm code: memory.fill (V8's C++) over its
;; first 16 bytes and WASI random_get (an import) over the next 16, then outputs
;; [first input byte, 0, count, 0]; the writes must work and the next call not see them.
;; `grow0` and `grow1` first grow the memory by 0 and by 1 page (V8 may set the whole
;; memory read-write when it grows: the window must not lose its watch unseen), then
;; write 0xCC over the first input byte, and output [first input byte, 0, count, 0].
(module
  (import "airlock" "output" (func $output (param i32 i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "airlock_abi_version") (result i32) (i32.const 1))
  (func (export "airlock_alloc") (param $len i32) (result i32)
    (local $pages i32)
    (if (i32.gt_u (local.get $len) (i32.const 0xFFFEFFEF))
      (then (return (i32.const 0))))
    (local.set $pages
      (i32.shr_u (i32.add (local.get $len) (i32.const 65567)) (i32.const 16)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (i32.const 32))
  (func (export "run") (param $ptr i32) (param $len i32) (result i32)
    (local $end i32)
    (local.set $end (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 1)))
    (i32.store8 offset=16 (i32.const 0) (i32.load8_u (local.get $ptr)))
    (i32.store8 offset=17 (i32.const 0) (i32.load8_u (i32.add (local.get $ptr) (local.get $len))))
    (i32.store8 offset=18 (i32.const 0) (i32.add (i32.load8_u offset=8 (i32.const 0)) (i32.const 1)))
    (i32.store8 offset=19 (i32.const 0) (i32.load8_u (local.get $end)))
    (call $output (i32.const 16) (i32.const 4))
    (i32.store8 (local.get $ptr) (i32.const 0xAA))
    (i32.store8 (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 1)) (i32.const 0xAA))
    (i32.store8 (i32.add (local.get $ptr) (local.get $len)) (i32.const 0xAA))
    (i32.store8 (local.get $end) (i32.const 0xAA))
    (i32.store8 offset=8 (i32.const 0) (i32.load8_u offset=18 (i32.const 0)))
    (i32.const 0))
  (func (export "look") (param $ptr i32) (param $len i32) (result i32)
    (local $end i32)
    (local.set $end (i32.sub (i32.shl (memory.size) (i32.const 16)) (i32.const 1)))
    (i32.store8 offset=16 (i32.const 0) (i32.load8_u (local.get $ptr)))
    (i32.store8 offset=17 (i32.const 0) (i32.load8_u (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 1))))
    (i32.store8 offset=18 (i32.const 0) (i32.add (i32.load8_u offset=8 (i32.const 0)) (i32.const 1)))
    (i32.store8 offset=19 (i32.const 0) (i32.load8_u (local.get $end)))
    (call $output (i32.const 16) (i32.const 4))
    (i32.store8 (local.get $end) (i32.const 0xAA))
    (i32.store8 offset=8 (i32.const 0) (i32.load8_u offset=18 (i32.const 0)))
    (i32.const 0))
  (func (export "fill") (param $ptr i32) (param $len i32) (result i32)
    (memory.fill (local.get $ptr) (i32.const 0xBB) (i32.const 16))
    (if (i32.ne (call $random_get (i32.add (local.get $ptr) (i32.const 16)) (i32.const 16)) (i32.const 0))
      (then unreachable))
    (i32.store8 offset=16 (i32.const 0) (i32.load8_u (local.get $ptr)))
    (i32.store8 offset=17 (i32.const 0) (i32.const 0))
    (i32.store8 offset=18 (i32.const 0) (i32.add (i32.load8_u offset=8 (i32.const 0)) (i32.const 1)))
    (i32.store8 offset=19 (i32.const 0) (i32.const 0))
    (call $output (i32.const 16) (i32.const 4))
    (i32.store8 offset=8 (i32.const 0) (i32.load8_u offset=18 (i32.const 0)))
    (i32.const 0))
  (func $grow_write (param $ptr i32) (param $pages i32)
    (drop (memory.grow (local.get $pages)))
    (i32.store8 (local.get $ptr) (i32.const 0xCC))
    (i32.store8 offset=16 (i32.const 0) (i32.load8_u (local.get $ptr)))
    (i32.store8 offset=17 (i32.const 0) (i32.const 0))
    (i32.store8 offset=18 (i32.const 0) (i32.add (i32.load8_u offset=8 (i32.const 0)) (i32.const 1)))
    (i32.store8 offset=19 (i32.const 0) (i32.const 0))
    (call $output (i32.const 16) (i32.const 4))
    (i32.store8 offset=8 (i32.const 0) (i32.load8_u offset=18 (i32.const 0))))
  (func (export "grow0") (param $ptr i32) (param $len i32) (result i32)
    (call $grow_write (local.get $ptr) (i32.const 0))
    (i32.const 0))
  (func (export "grow1") (param $ptr i32) (param $len i32) (result i32)
    (call $grow_write (local.get $ptr) (i32.const 1))
    (i32.const 0)))
