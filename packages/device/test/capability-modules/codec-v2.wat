;; Capability "codec" v2 (module ABI 1): output = [0x02] ++ reverse(input).
;; Imports rotor.log (declared in its metadata) and logs once on an empty input.
(module
  (import "rotor" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1 2)
  (data (i32.const 0) "codec v2: empty input")
  (func (export "io_ptr") (result i32) (i32.const 1024))
  (func (export "io_cap") (result i32) (i32.const 16384))
  (func (export "process") (param $len i32) (result i32)
    (local $i i32)
    (if (i32.ge_u (local.get $len) (i32.const 16384)) (then (return (i32.const -1))))
    (if (i32.eqz (local.get $len)) (then (call $log (i32.const 0) (i32.const 21))))
    ;; reversed copy into the scratch area at 32768, then back
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (i32.store8 offset=32769 (local.get $i)
          (i32.load8_u offset=1024 (i32.sub (i32.sub (local.get $len) (local.get $i)) (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store8 (i32.const 32768) (i32.const 2))
    (memory.copy (i32.const 1024) (i32.const 32768) (i32.add (local.get $len) (i32.const 1)))
    (i32.add (local.get $len) (i32.const 1))))
