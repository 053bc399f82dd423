import torch, triton, json, qviz
from triton.testing import do_bench
out = {}
for n in (4096, 8192):
    x = torch.randn(n, n, device="cuda")
    y = torch.empty_like(x)
    t_copy = do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode="median")
    from qviz.gpu.fakequant import rtn_groups, codebook_blocks
    t_k = do_bench(lambda: rtn_groups(x, 128, 4, False, check=False), warmup=25, rep=200, return_mode="median")
    t_api = do_bench(lambda: qviz.fake_quantize(x, qviz.RTN(bits=4, group_size=128)), warmup=25, rep=200, return_mode="median")
    t_nf4 = do_bench(lambda: qviz.fake_quantize(x, qviz.BnbNF4()), warmup=25, rep=200, return_mode="median")
    out[n] = dict(copy=t_copy, rtn_kernel=t_k, rtn_api=t_api, nf4_api=t_nf4)
    print(n, {k: round(v*1e3, 1) for k, v in out[n].items()}, "us")
