;; A large module for the swap benchmark: codec v1's function plus a data segment of DATA_BYTES bytes (substituted by
;; the build with deterministic printable text), so that the binary is about that size.
(module
  (memory (export "memory") MIN_PAGES MIN_PAGES)
  (data (i32.const 65536) "DATA")
  (func (export "io_ptr") (result i32) (i32.const 1024))
  (func (export "io_cap") (result i32) (i32.const 16384))
  (func (export "process") (param $len i32) (result i32)
    (local $i i32)
    (if (i32.ge_u (local.get $len) (i32.const 16384)) (then (return (i32.const -1))))
    (local.set $i (local.get $len))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $i)))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (i32.store8 offset=1025 (local.get $i)
          (i32.xor (i32.load8_u offset=1024 (local.get $i)) (i32.const 0x55)))
        (br $next)))
    (i32.store8 (i32.const 1024) (i32.const VERSION_BYTE))
    (i32.add (local.get $len) (i32.const 1))))
