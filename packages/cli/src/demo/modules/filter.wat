;; Capability "filter" (module ABI 1, packages/device/src/capabilities/README.md): a sensor-noise filter.
;; output = [VERSION_BYTE] ++ (the input bytes >= THRESHOLD, in order). v1 and v2 differ by their threshold.
;; No host functions. Built at run time by modules/build.ts (wabt); THRESHOLD and VERSION_BYTE are substituted.
(module
  (memory (export "memory") 1 1)
  (func (export "io_ptr") (result i32) (i32.const 1024))
  (func (export "io_cap") (result i32) (i32.const 16384))
  (func (export "process") (param $len i32) (result i32)
    (local $i i32)
    (local $o i32)
    (if (i32.ge_u (local.get $len) (i32.const 16384)) (then (return (i32.const -1))))
    ;; kept bytes go to the scratch area at 32769.., then [version ++ kept] is copied back to io_ptr
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (if (i32.ge_u (i32.load8_u offset=1024 (local.get $i)) (i32.const THRESHOLD))
          (then
            (i32.store8 offset=32769 (local.get $o) (i32.load8_u offset=1024 (local.get $i)))
            (local.set $o (i32.add (local.get $o) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store8 (i32.const 32768) (i32.const VERSION_BYTE))
    (memory.copy (i32.const 1024) (i32.const 32768) (i32.add (local.get $o) (i32.const 1)))
    (i32.add (local.get $o) (i32.const 1))))
