// tinyholder: a tiny static C "signer" for package dumps' tests. It reads each file named on its
// command line (PEM private keys, and raw.bin: raw key material as a signer holds it in memory)
// into the heap, copies raw.bin into its writable .data and onto two threads' stacks (64 KiB
// stacks), raises its RLIMIT_CORE, prints "READY <pid>" and waits for a line on stdin; the line "crash" makes a non-main
// thread abort (SIGABRT), anything else exits.
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static char data_copy[8192] __attribute__((aligned(4096))) = {1};
static size_t raw_len;
static char *raw;
static pthread_barrier_t ready;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int crash;

static char *slurp(const char *path, size_t *len) {
	FILE *f = fopen(path, "rb");
	if (!f) { perror(path); exit(1); }
	char *b = malloc(1 << 16);
	*len = fread(b, 1, 1 << 16, f);
	fclose(f);
	return b;
}

static void *worker(void *arg) {
	char frame[4096] __attribute__((aligned(16)));
	memcpy(frame, raw, raw_len < sizeof frame ? raw_len : sizeof frame);
	__asm__ volatile("" : : "r"(frame) : "memory"); /* keep the copy */
	pthread_barrier_wait(&ready);
	pthread_mutex_lock(&mu);
	while (!crash) pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	if (arg) abort();
	for (;;) pause();
	return NULL;
}

int main(int argc, char **argv) {
	struct rlimit core = {RLIM_INFINITY, RLIM_INFINITY};
	setrlimit(RLIMIT_CORE, &core); /* so the kernel dumps when the test asks for a crash */
	for (int i = 1; i < argc; i++) {
		size_t n;
		char *b = slurp(argv[i], &n);
		if (strstr(argv[i], "raw.bin")) { raw = b; raw_len = n; }
	}
	if (!raw) { fprintf(stderr, "no raw.bin\n"); return 2; }
	memcpy(data_copy, raw, raw_len < sizeof data_copy ? raw_len : sizeof data_copy);
	pthread_barrier_init(&ready, 0, 3);
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setstacksize(&a, 65536);
	pthread_t t[2];
	for (long i = 0; i < 2; i++) pthread_create(&t[i], &a, worker, (void *)i);
	pthread_barrier_wait(&ready);
	printf("READY %d\n", getpid());
	fflush(stdout);
	char line[64];
	if (fgets(line, sizeof line, stdin) && strncmp(line, "crash", 5) == 0) {
		pthread_mutex_lock(&mu);
		crash = 1;
		pthread_cond_broadcast(&cv);
		pthread_mutex_unlock(&mu);
		for (;;) pause();
	}
	return 0;
}
