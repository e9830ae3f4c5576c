module github.com/switchyard-serving/switchyard

go 1.26.8

require (
	github.com/dlclark/regexp2/v2 v2.13.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
