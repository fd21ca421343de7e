package kubetest

import (
	"context"
	"fmt"
	"net"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// RESTConfig is a client configuration for user (AdminUser or one of
// Options.Users) that reaches the API server from any namespace: it dials
// from inside the API server's.
func (e *Env) RESTConfig(user string) *rest.Config {
	return &rest.Config{
		Host:            e.Server,
		BearerToken:     e.Token(user),
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             100,
		Burst:           200,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := e.inNS(func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
}

// Client is a clientset for user (see RESTConfig).
func (e *Env) Client(user string) kubernetes.Interface {
	c, err := kubernetes.NewForConfig(e.RESTConfig(user))
	if err != nil {
		panic(err) // only a bad configuration fails, and ours is good
	}
	return c
}

// ApplyRBAC creates the ClusterRoles, ClusterRoleBindings, Roles and
// RoleBindings of a YAML manifest (documents separated by ---), as admin;
// objects that exist are replaced.
func (e *Env) ApplyRBAC(ctx context.Context, manifest string) error {
	c := e.Client(AdminUser).RbacV1()
	for _, doc := range strings.Split(manifest, "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			return fmt.Errorf("decoding manifest: %w", err)
		}
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			_, err = c.ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				_, err = c.ClusterRoles().Update(ctx, o, metav1.UpdateOptions{})
			}
		case *rbacv1.ClusterRoleBinding:
			_, err = c.ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				_, err = c.ClusterRoleBindings().Update(ctx, o, metav1.UpdateOptions{})
			}
		case *rbacv1.Role:
			_, err = c.Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = c.RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			return fmt.Errorf("manifest: %T is not an RBAC object", obj)
		}
		if err != nil {
			return fmt.Errorf("applying %T: %w", obj, err)
		}
	}
	return nil
}
