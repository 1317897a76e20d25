;; A module whose start function never returns: instantiation itself must be bounded (the load time limit).
(module
  (memory (export "memory") 1 1)
  (func $spin (loop $forever (br $forever)))
  (start $spin)
  (func (export "io_ptr") (result i32) (i32.const 1024))
  (func (export "io_cap") (result i32) (i32.const 4096))
  (func (export "process") (param $len i32) (result i32) (local.get $len)))
