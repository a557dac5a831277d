//go:build tools

// Package build pins the Kubernetes commands hack/build-cluster.sh builds, so that
// `go mod tidy` keeps their dependencies in go.sum. It is never compiled.
package build

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
