module github.com/switchyard-serving/switchyard/model/kernels/internal/gen

go 1.26.8
