/* The sandbox ("pause") container of the kube lane's pods: it holds the
 * pod's namespaces and does nothing else until the runtime stops it. Built
 * static by e2e/kube/images.sh, as no registry serves the usual one here. */
#include <signal.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    for (;;) {
        pause();
    }
}
