"""Huge-page buffers: aligned, zeroed, usable as tensors, advised to the OS where it has them."""

import mmap
import os
from pathlib import Path

import torch

import minigpt
from minigpt import hugepages


def _vma_flags(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping holding `address`."""
    fields, inside = {}, False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def test_a_buffer_is_zeroed_aligned_and_holds_data():
    b = hugepages.buffer(5 << 20)
    assert b.dtype == torch.uint8 and b.numel() == 5 << 20 and not b.any()
    if hugepages.available():
        assert b.data_ptr() % hugepages.HUGE_PAGE == 0
        # advised: the kernel may back it with huge pages (whether it finds free ones is its affair)
        assert _vma_flags(b.data_ptr()).get("THPeligible") == "1"
    x = b.view(torch.float32)
    x.fill_(2.0)
    assert x.sum().item() == 2.0 * x.numel()


def test_copies_are_shaped_typed_and_aligned_side_by_side():
    tensors = [torch.randn(3, 5), torch.empty(0), torch.randn(7).bfloat16(), torch.randn(2, 2, 2)]
    out = hugepages.copies(tensors)
    assert [(o.shape, o.dtype) for o in out] == [(t.shape, t.dtype) for t in tensors]
    assert out[1] is tensors[1]  # an empty tensor stays as it is
    placed = [o for o in out if o.numel()]
    assert all(o.data_ptr() % 64 == 0 for o in placed)
    ends = sorted((o.data_ptr(), o.data_ptr() + o.numel() * o.element_size()) for o in placed)
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))  # no overlap
    for o, t in zip(out, tensors):
        o.copy_(t)
        assert torch.equal(o, t)


def test_a_buffer_can_be_asked_for_in_small_pages():
    b = hugepages.buffer(4 << 20, huge=False)
    assert b.numel() == 4 << 20 and not b.any()
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        assert _vma_flags(b.data_ptr()).get("THPeligible") == "0"  # even where the OS or torch would


def test_without_huge_pages_a_buffer_is_plain_memory(monkeypatch):
    monkeypatch.setattr(hugepages, "available", lambda: False)
    b = hugepages.buffer(1000)
    assert b.numel() == 1000 and not b.any()
    assert hugepages.buffer(0).numel() == 0


def test_the_entry_points_ask_torch_for_huge_pages_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    minigpt.prepare_torch_env()
    assert minigpt.TORCH_ENV["THP_MEM_ALLOC_ENABLE"] == "1" == os.environ["THP_MEM_ALLOC_ENABLE"]
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    minigpt.prepare_torch_env()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
    root = Path(minigpt.__file__).parents[1]
    for entry, first_import in (("minigpt/__main__.py", "from .cli"), ("app.py", "from minigpt.recovery")):
        text = (root / entry).read_text()  # set before the first import that could load torch
        assert text.index("prepare_torch_env()") < text.index(first_import)
