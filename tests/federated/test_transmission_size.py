"""Bytes a site sends per round at the paper's size (ViT-B, 1024 px): FedMSA vs FedSAM.

Builds both networks on the CPU (random init has the same tensor sizes as sam_vit_b_01ec64.pth), selects
the transmitted state as the executor does and serializes the result DXO as NVFlare does."""

from __future__ import annotations

from nvflare.apis.dxo import DXO, DataKind, MetaKey

from fedfms.runtime.precision import ToHalfPrecision
from fedfms.runtime.selection import select_outgoing, serialized_size, transmitted_names
from fedfms.networks import MSASegmenter, SAMSegmenter


def sent_bytes(network) -> tuple[int, int, int, int]:
    """(number of tensors, payload bytes, serialized result bytes, the same with half_precision)."""
    names = transmitted_names(network)
    sent = select_outgoing(network.state_dict(), names, "measurement")
    dxo = DXO(DataKind.WEIGHTS, sent, {MetaKey.NUM_STEPS_CURRENT_ROUND: 100})
    size = serialized_size(dxo)
    return len(sent), sum(a.nbytes for a in sent.values()), size, serialized_size(ToHalfPrecision().process_dxo(dxo, None, None))


def test_fedmsa_sends_a_fraction_of_fedsam_at_vit_b():
    msa = sent_bytes(MSASegmenter(model_type="vit_b", image_size=1024))
    sam = sent_bytes(SAMSegmenter(model_type="vit_b", image_size=1024))
    print(f"\nFedMSA vit_b: {msa[0]} tensors, payload {msa[1]:,} B, serialized {msa[2]:,} B (float16: {msa[3]:,} B) per site per round")
    print(f"FedSAM vit_b: {sam[0]} tensors, payload {sam[1]:,} B, serialized {sam[2]:,} B (float16: {sam[3]:,} B) per site per round")
    for tensors, payload, size, half in (msa, sam):
        assert payload < size < payload * 1.01  # float32 arrays plus a small FOBS envelope
        assert payload / 2 < half < payload / 2 * 1.01  # half_precision: float16 arrays, same envelope
    assert 40e6 < msa[1] < 50e6 and 370e6 < sam[1] < 376e6  # 10.6 M vs 93.2 M float32 parameters


def test_compression_options_at_vit_b():
    """Bytes per site and round of FedMSA ViT-B under each transfer option (fedfms.orchestration.transfer:
    the job's own filter chains, server and one site, two rounds). Target of issue 9: <= 4.25 MB each way,
    10x below float32, after the first round (which sends the whole model once)."""
    from fedfms.orchestration.jobs import JobSettings
    from fedfms.orchestration.transfer import transfer_sizes

    network = MSASegmenter(model_type="vit_b", image_size=1024)
    weights = select_outgoing(network.state_dict(), transmitted_names(network), "measurement")
    options = {"float32": {}, "float16": dict(half_precision=True), "int8": dict(compression="int8"),
               "int8 top-0.2": dict(compression="int8", topk_fraction=0.2),
               "int8 partial K=1": dict(compression="int8", partial_upload_blocks=1),
               "float32 partial K=4": dict(partial_upload_blocks=4)}
    sizes = {name: transfer_sizes(JobSettings("fedmsa", "prostate", **o), weights) for name, o in options.items()}
    for name, s in sizes.items():
        print(f"\nFedMSA vit_b {name}: up {s['up']:,} B, down {s['down']:,} B (round 0: {s['down_first']:,} B)", end="")
    full = sizes["float32"]["up"]
    assert sizes["float32"]["down"] == sizes["float32"]["down_first"] and abs(sizes["float32"]["down"] - full) < 100
    assert 0.25 < sizes["int8"]["up"] / full < 0.26  # 1 byte a parameter + one float32 scale per output channel
    for name in ("int8 top-0.2", "int8 partial K=1"):
        assert sizes[name]["up"] <= 4.25e6 and sizes[name]["down"] <= 4.25e6 and full / sizes[name]["up"] >= 10
        assert abs(sizes[name]["down_first"] - full) < 100  # the first round sends the whole float32 model
    assert 0.55 < sizes["float32 partial K=4"]["up"] / full < 0.56 and sizes["float32 partial K=4"]["down"] > full - 100
