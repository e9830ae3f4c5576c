module streamexp

go 1.26
