;; A memory without a maximum: refused at load (the sandbox needs a bound it can check).
(module
  (memory (export "memory") 1)
  (func (export "io_ptr") (result i32) (i32.const 1024))
  (func (export "io_cap") (result i32) (i32.const 4096))
  (func (export "process") (param $len i32) (result i32) (local.get $len)))
