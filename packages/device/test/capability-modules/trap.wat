;; A trapping module: version byte 0x05; an input starting with 0xFD divides by zero (a trap).
(module
  (memory (export "memory") 1 1)
  (func (export "io_ptr") (result i32) (i32.const 1024))
  (func (export "io_cap") (result i32) (i32.const 4096))
  (func (export "process") (param $len i32) (result i32)
    (if (i32.and (i32.gt_u (local.get $len) (i32.const 0))
                 (i32.eq (i32.load8_u (i32.const 1024)) (i32.const 0xfd)))
      (then (drop (i32.div_u (i32.const 1) (i32.const 0)))))
    (memory.copy (i32.const 1025) (i32.const 1024) (local.get $len))
    (i32.store8 (i32.const 1024) (i32.const 5))
    (i32.add (local.get $len) (i32.const 1))))
