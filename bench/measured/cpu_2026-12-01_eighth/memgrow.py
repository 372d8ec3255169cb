import ctypes, sys, resource
libc = ctypes.CDLL("libc.so.6")
mode = sys.argv[1]
if mode == "off":
    libc.mallopt(-4, 0); libc.mallopt(-1, 1 << 30)
elif mode == "thr":
    libc.mallopt(-3, 32 << 20); libc.mallopt(-1, 1 << 30)
import torch
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
MB = int(sys.argv[2])
out = []
x = torch.randn(1024, 256)
for i in range(60):
    a = torch.empty(MB << 18)  # MB MiB of fp32
    a.fill_(1.0)
    b = torch.empty((MB << 18) + 1000 * (i % 3)); b.fill_(2.0)  # slightly different sizes
    del a, b
    if i % 20 == 19: out.append(round(rss()))
print(mode, MB, "MiB blocks: RSS MiB after 20/40/60 loops", out, "maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
