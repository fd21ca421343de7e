// Package kubetest runs a real Kubernetes API server for tests: etcd and
// kube-apiserver, built from Go modules at the release that matches xdplb's
// client-go (see Version) and cached outside the clone (see FindOrBuild),
// with admin credentials in a kubeconfig file. Nothing else of a cluster
// runs: no controller manager, scheduler or kubelet, so tests create the
// objects those would (EndpointSlices, Nodes) themselves.
//
// The command kube-env (internal/kubetest/cmd/kube-env) starts the same
// environment for a person.
package kubetest
