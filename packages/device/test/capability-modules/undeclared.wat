;; Imports a host function (IMPORT_MODULE.IMPORT_NAME, substituted by the build) that its metadata does not declare.
(module
  (import "IMPORT_MODULE" "IMPORT_NAME" (func $f (result i32)))
  (memory (export "memory") 1 1)
  (func (export "io_ptr") (result i32) (i32.const 1024))
  (func (export "io_cap") (result i32) (i32.const 4096))
  (func (export "process") (param $len i32) (result i32) (drop (call $f)) (i32.const 0)))
