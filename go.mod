module github.com/edgeaudit/edgeaudit

go 1.26.8
