;; A runaway module: like codec v1 but version byte 0x03, and an input starting with 0xFF makes it loop forever.
(module
  (memory (export "memory") 1 1)
  (func (export "io_ptr") (result i32) (i32.const 1024))
  (func (export "io_cap") (result i32) (i32.const 4096))
  (func (export "process") (param $len i32) (result i32)
    (if (i32.and (i32.gt_u (local.get $len) (i32.const 0))
                 (i32.eq (i32.load8_u (i32.const 1024)) (i32.const 0xff)))
      (then (loop $forever (br $forever))))
    (memory.copy (i32.const 1025) (i32.const 1024) (local.get $len))
    (i32.store8 (i32.const 1024) (i32.const 3))
    (i32.add (local.get $len) (i32.const 1))))
