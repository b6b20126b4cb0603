/* Loopback connect/accept/close churn for scripts/bench/overhead.
 *   churn SECONDS WORKERS [rst]  -> prints "connections=N seconds=S rate=R"
 * One listener on 127.0.0.1 (ephemeral port), one accept thread that closes what it accepts,
 * WORKERS client threads that connect and close in a loop until the time is up. Bounded in time. */
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

static struct sockaddr_in addr;
static atomic_long done_conns;
static atomic_int stop;
static int rst_close;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
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
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            continue;
        if (rst_close) {   /* RST on close instead of FIN: no TIME_WAIT */
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
            n++;
        close(fd);
    }
    atomic_fetch_add(&done_conns, n);
    return NULL;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 5;
    int workers = argc > 2 ? atoi(argv[2]) : 2;
    rst_close = argc > 3 && strcmp(argv[3], "rst") == 0;
    if (secs <= 0 || secs > 600 || workers < 1 || workers > 64) {
        fprintf(stderr, "usage: churn SECONDS(<=600) WORKERS(<=64)\n");
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) || listen(lfd, 4096)) {
        perror("listen");
        return 1;
    }
    socklen_t len = sizeof(addr);
    getsockname(lfd, (struct sockaddr *)&addr, &len);
    struct timeval tv = {0, 200000};
    setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    pthread_t acc, cl[64];
    pthread_create(&acc, NULL, acceptor, &lfd);
    double t0 = now();
    for (int i = 0; i < workers; i++)
        pthread_create(&cl[i], NULL, client, NULL);
    while (now() - t0 < secs)
        usleep(10000);
    atomic_store(&stop, 1);
    for (int i = 0; i < workers; i++)
        pthread_join(cl[i], NULL);
    double el = now() - t0;
    pthread_join(acc, NULL);
    long n = atomic_load(&done_conns);
    printf("connections=%ld seconds=%.3f rate=%.1f\n", n, el, n / el);
    return 0;
}
