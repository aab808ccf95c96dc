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
