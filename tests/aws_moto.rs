// moto harness tests: being written
