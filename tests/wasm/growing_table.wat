;; A small table that run() grows by 10,000,000 entries.
(module
  (table $t 1 funcref)
  (memory (export "memory") 1)
  (func (export "airlock_abi_version") (result i32) (i32.const 1))
  (func (export "airlock_alloc") (param i32) (result i32) (i32.const 16))
  (func (export "run") (param i32 i32) (result i32)
    (if (i32.eq (table.grow $t (ref.null func) (i32.const 10000000)) (i32.const -1))
      (then (return (i32.const 6))))  ;; ResourceExhausted: the grow was refused
    (i32.const 0)))
