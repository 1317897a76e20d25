;; Capability "codec" v1 (module ABI 1): output = [0x01] ++ (input XOR 0x55).
;; No host functions.
(module
  (memory (export "memory") 1 2)
  (func (export "io_ptr") (result i32) (i32.const 1024))
  (func (export "io_cap") (result i32) (i32.const 16384))
  (func (export "process") (param $len i32) (result i32)
    (local $i i32)
    (if (i32.ge_u (local.get $len) (i32.const 16384)) (then (return (i32.const -1))))
    ;; from the end, so the shift by one byte does not overwrite unread input
    (local.set $i (local.get $len))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $i)))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (i32.store8 offset=1025 (local.get $i)
          (i32.xor (i32.load8_u offset=1024 (local.get $i)) (i32.const 0x55)))
        (br $next)))
    (i32.store8 (i32.const 1024) (i32.const 1))
    (i32.add (local.get $len) (i32.const 1))))
