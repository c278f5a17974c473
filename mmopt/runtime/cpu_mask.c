/* cpu_mask.c: run a process as if this x86-64 CPU had no AVX-512 (and no VNNI, no AMX).
 *
 * Loaded with LD_PRELOAD (mmopt/runtime/cpu_mask.py builds and loads it). Linux's CPUID faulting
 * (arch_prctl(ARCH_SET_CPUID, 0)) makes every CPUID instruction of the process trap with SIGSEGV;
 * the handler below executes the real CPUID, clears the feature bits of the hidden extensions and
 * resumes after the instruction. Libraries that pick kernels by CPUID at run time (onnxruntime's
 * MLAS, numpy, oneDNN) then choose their AVX2 paths, as on an AVX2-only CPU; the hardware still
 * runs whatever code a program was compiled to (a compiled mmopt artifact keeps its own ISA).
 *
 * On a CPU that has AVX-512 the family and model (CPUID leaf 1) become those of the same vendor's
 * last cores without it (AMD Zen 3: family 19h model 01h; Intel Coffee Lake: family 6 model 9Eh),
 * so that a program naming the host CPU by its model (LLVM's -mcpu=native, mmopt's `x86` target)
 * gets an AVX2 CPU as well; every instruction such a core has, an AVX-512 core of its vendor has
 * too. A CPU without AVX-512 keeps its own family and model (renaming a Zen 2 to a Zen 3 would
 * promise instructions it lacks).
 *
 * What it cannot hide: the kernel's /proc/cpuinfo flags, XGETBV (XCR0 keeps the AVX-512 state
 * bits; MLAS and numpy require the CPUID bit as well), and the features glibc's dynamic loader read
 * before this library's constructor ran (its memcpy variants). The process's own SIGSEGV handlers
 * (Python's faulthandler, TVM's backtrace printer) stay installed behind this one: sigaction() and
 * signal() for SIGSEGV are intercepted and their handlers get every fault that is not a CPUID.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
typedef sighandler_t (*signal_fn)(int, sighandler_t);

static sigaction_fn real_sigaction;
static signal_fn real_signal;
static struct sigaction next_handler; /* the handler the process installed (or had) */
static int active;
static int has_avx512; /* the real CPU's AVX512F bit, read before CPUID faults */

/* CPUID leaf 7 sub-leaf 0: EBX AVX512F/DQ/IFMA/PF/ER/CD/BW/VL, ECX AVX512VBMI/VBMI2/VNNI/BITALG/
 * VPOPCNTDQ, EDX AVX512_4VNNIW/4FMAPS/VP2INTERSECT/AMX-BF16/AVX512_FP16/AMX-TILE/AMX-INT8;
 * sub-leaf 1: EAX AVX-VNNI, AVX512_BF16, AVX-IFMA. */
#define BIT(n) (1u << (n))
static const unsigned hide7_ebx = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) |
                                  BIT(30) | BIT(31);
static const unsigned hide7_ecx = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14);
static const unsigned hide7_edx = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25);
static const unsigned hide7_1_eax = BIT(4) | BIT(5) | BIT(23);

static void real_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1); /* this thread may execute CPUID again */
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}

/* CPUID leaf 1 EAX of a CPU without AVX-512: family, model, extended family and model fields
 * (the stepping is kept) */
static unsigned avx2_signature(unsigned eax) {
  unsigned v[4];
  real_cpuid(0, 0, v);
  if (v[1] == 0x68747541) /* "Auth"enticAMD: family 0Fh + 0Ah = 19h, model 01h (Zen 3) */
    return (eax & 0xf) | (0x1u << 4) | (0xfu << 8) | (0xau << 20);
  if (v[1] == 0x756e6547) /* "Genu"ineIntel: family 6, model 9Eh (Coffee Lake) */
    return (eax & 0xf) | (0xeu << 4) | (0x6u << 8) | (0x9u << 16);
  return eax;
}

static void hide(unsigned leaf, unsigned sub, unsigned r[4]) {
  if (leaf == 1 && has_avx512) {
    r[0] = avx2_signature(r[0]);
  } else if (leaf == 7 && sub == 0) {
    r[1] &= ~hide7_ebx;
    r[2] &= ~hide7_ecx;
    r[3] &= ~hide7_edx;
  } else if (leaf == 7 && sub == 1) {
    r[0] &= ~hide7_1_eax;
  }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
  greg_t *reg = ((ucontext_t *)context)->uc_mcontext.gregs;
  /* a faulting CPUID is a general-protection fault (SI_KERNEL) at a 0F A2 instruction; only then
   * is the instruction pointer known to point at readable code */
  if (info->si_code == SI_KERNEL) {
    const unsigned char *ip = (const unsigned char *)reg[REG_RIP];
    if (ip[0] == 0x0f && ip[1] == 0xa2) {
      unsigned r[4], leaf = (unsigned)reg[REG_RAX], sub = (unsigned)reg[REG_RCX];
      real_cpuid(leaf, sub, r);
      hide(leaf, sub, r);
      reg[REG_RAX] = r[0];
      reg[REG_RBX] = r[1];
      reg[REG_RCX] = r[2];
      reg[REG_RDX] = r[3];
      reg[REG_RIP] += 2;
      return;
    }
  }
  if (next_handler.sa_flags & SA_SIGINFO) {
    if (next_handler.sa_sigaction) {
      next_handler.sa_sigaction(sig, info, context);
      return;
    }
  } else if (next_handler.sa_handler != SIG_DFL && next_handler.sa_handler != SIG_IGN) {
    next_handler.sa_handler(sig);
    return;
  }
  /* no handler of the process's own: the default action, when the instruction faults again or,
   * for a signal sent by kill() or raise() (si_code <= 0), now */
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  real_sigaction(SIGSEGV, &dfl, NULL);
  if (info->si_code <= 0) raise(sig);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV || !active) return real_sigaction(sig, act, old);
  if (old) *old = next_handler;
  if (act) next_handler = *act;
  return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
  if (!real_signal) real_signal = (signal_fn)dlsym(RTLD_NEXT, "signal");
  if (sig != SIGSEGV || !active) return real_signal(sig, handler);
  sighandler_t old = (next_handler.sa_flags & SA_SIGINFO) ? SIG_DFL : next_handler.sa_handler;
  memset(&next_handler, 0, sizeof next_handler);
  next_handler.sa_handler = handler;
  return old;
}

__attribute__((constructor)) static void install(void) {
  struct sigaction sa;
  unsigned r[4] = {0, 0, 0, 0};
  if (__get_cpuid_max(0, 0) >= 7) __cpuid_count(7, 0, r[0], r[1], r[2], r[3]);
  has_avx512 = (r[1] & BIT(16)) != 0;
  if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (real_sigaction(SIGSEGV, &sa, &next_handler) != 0) return;
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) { /* no CPUID faulting: change nothing */
    real_sigaction(SIGSEGV, &next_handler, NULL);
    return;
  }
  active = 1; /* threads created from now on inherit the faulting; exec clears it */
}
