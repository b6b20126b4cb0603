/* Loopback connect/accept/close churn for scripts/bench/overhead (and dns, floor).
 *   churn SECONDS WORKERS [rst|fin] [paired|acceptor]
 *     -> prints "connections=N seconds=S rate=R"
 * paired (the default): each worker thread has its own listener on 127.0.0.1 (ephemeral port) and
 *   runs connect, accept, close in a loop. On loopback the handshake completes inside connect(),
 *   so accept() returns at once: no thread waits on another, every CPU stays busy, and the rate
 *   moves with the CPU each connection costs.
 * acceptor: one shared listener and one accept thread that closes what it accepts; WORKERS
 *   client threads connect and close. The accept thread sleeps whenever its queue is empty, so the
 *   rate also moves with how fast the scheduler wakes it and where it places the threads.
 * rst: SO_LINGER 0 on the client socket, RST on close (no TIME_WAIT); fin: a normal close.
 * Bounded in time. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr;        /* acceptor shape: the shared listener */
static atomic_long done_conns;
static atomic_int stop;
static int rst_close;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* a listener on 127.0.0.1, ephemeral port (written to *a); -1 on failure */
static int listen_loopback(struct sockaddr_in *a, int backlog)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    if (lfd < 0)
        return -1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(*a);
    if (bind(lfd, (struct sockaddr *)a, sizeof(*a)) || listen(lfd, backlog) ||
        getsockname(lfd, (struct sockaddr *)a, &len)) {
        close(lfd);
        return -1;
    }
    struct timeval tv = {0, 200000};   /* an accept() never blocks past the stop flag for long */
    setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return lfd;
}

/* a client socket; with rst_close, one that sends RST on close instead of FIN */
static int client_socket(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd >= 0 && rst_close) {
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    return fd;
}

static void *acceptor(void *arg)
{
    int lfd = *(int *)arg;
    while (!atomic_load(&stop)) {
        int c = accept(lfd, NULL, NULL);
        if (c >= 0)
            close(c);
    }
    return NULL;
}

static void *client(void *arg)
{
    (void)arg;
    long n = 0;
    while (!atomic_load(&stop)) {
        int fd = client_socket();
        if (fd < 0)
            continue;
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
            n++;
        close(fd);
    }
    atomic_fetch_add(&done_conns, n);
    return NULL;
}

static void *paired(void *arg)
{
    int *ok = arg;
    struct sockaddr_in a;
    int lfd = listen_loopback(&a, 128);
    if (lfd < 0) {
        perror("listen");
        *ok = 0;
        return NULL;
    }
    long n = 0;
    while (!atomic_load(&stop)) {
        int fd = client_socket();
        if (fd < 0)
            continue;
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
            int c = accept(lfd, NULL, NULL);
            if (c >= 0) {
                close(c);
                n++;
            }
        }
        close(fd);
    }
    close(lfd);
    atomic_fetch_add(&done_conns, n);
    return NULL;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 5;
    int workers = argc > 2 ? atoi(argv[2]) : 2;
    rst_close = argc > 3 && strcmp(argv[3], "rst") == 0;
    int shape_acceptor = argc > 4 && strcmp(argv[4], "acceptor") == 0;
    if (secs <= 0 || secs > 600 || workers < 1 || workers > 64 ||
        (argc > 3 && strcmp(argv[3], "rst") && strcmp(argv[3], "fin")) ||
        (argc > 4 && strcmp(argv[4], "paired") && strcmp(argv[4], "acceptor"))) {
        fprintf(stderr, "usage: churn SECONDS(<=600) WORKERS(<=64) [rst|fin] [paired|acceptor]\n");
        return 2;
    }
    int lfd = -1, ok[64];
    pthread_t acc, th[64];
    if (shape_acceptor) {
        lfd = listen_loopback(&addr, 4096);
        if (lfd < 0) {
            perror("listen");
            return 1;
        }
        pthread_create(&acc, NULL, acceptor, &lfd);
    }
    double t0 = now();
    for (int i = 0; i < workers; i++) {
        ok[i] = 1;
        pthread_create(&th[i], NULL, shape_acceptor ? client : paired, &ok[i]);
    }
    while (now() - t0 < secs)
        usleep(10000);
    atomic_store(&stop, 1);
    for (int i = 0; i < workers; i++)
        pthread_join(th[i], NULL);
    double el = now() - t0;
    if (shape_acceptor)
        pthread_join(acc, NULL);
    for (int i = 0; i < workers; i++)
        if (!ok[i])
            return 1;
    long n = atomic_load(&done_conns);
    printf("connections=%ld seconds=%.3f rate=%.1f\n", n, el, n / el);
    return 0;
}
