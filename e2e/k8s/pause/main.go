// Command pause is the pod sandbox process of the e2e node (containerd's sandbox image): it
// holds the pod's namespaces open and sleeps until the runtime stops it. It is built here,
// statically, because no image registry is reachable to pull registry.k8s.io/pause from.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
