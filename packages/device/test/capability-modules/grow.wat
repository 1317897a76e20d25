;; A memory-hungry module: version byte 0x04; an input starting with 0xFE makes it grow its memory page by page
;; without end. The memory maximum (MAX_PAGES, substituted by the build) stops the growth: memory.grow returns -1,
;; and the module then traps.
(module
  (memory (export "memory") 1 MAX_PAGES)
  (func (export "io_ptr") (result i32) (i32.const 1024))
  (func (export "io_cap") (result i32) (i32.const 4096))
  (func (export "process") (param $len i32) (result i32)
    (if (i32.and (i32.gt_u (local.get $len) (i32.const 0))
                 (i32.eq (i32.load8_u (i32.const 1024)) (i32.const 0xfe)))
      (then
        (loop $more
          (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
        unreachable))
    (memory.copy (i32.const 1025) (i32.const 1024) (local.get $len))
    (i32.store8 (i32.const 1024) (i32.const 4))
    (i32.add (local.get $len) (i32.const 1))))
