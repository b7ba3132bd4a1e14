"""Region attention (R-MSA): exact attention within each region of a label map, never forming an N x N mask.

Tokens are sorted by region (:mod:`.layout`: :class:`RegionLayout`, built once per network forward and shared by
every R-MSA layer); the packed path (:mod:`.packed`) runs small regions packed into blocks and large ones
unmasked, the FlexAttention path (:mod:`.flex`, CUDA) a block mask over the sorted tokens, the varlen path
(:mod:`.varlen`, CUDA float16 / bfloat16) flash attention with every region one sequence, the dense reference
(:mod:`.reference`) Eq. 3-4 as written. :mod:`.dispatch` chooses between them (``region_impl``) and holds the
entry points; :mod:`.sdpa` is the softmax attention call the packed path and W-MSA / MSA share.
"""

from ratlit.models.region_attention.dispatch import (
    AUTO_IMPL,
    REGION_IMPLS,
    auto_region_impl,
    region_attention,
    region_attention_tokens,
    region_impl_choice,
    region_layout,
    wants_packed_layout,
)
from ratlit.models.region_attention.flex import FLEX_BLOCK, region_block_mask
from ratlit.models.region_attention.layout import RegionLayout, build_region_layout, gather_rows, packed_block_size
from ratlit.models.region_attention.reference import dense_region_attention
from ratlit.models.region_attention.sdpa import attention, matmul_form_is_faster
from ratlit.models.region_attention.varlen import region_sequences, varlen_unsupported

__all__ = [
    "AUTO_IMPL",
    "FLEX_BLOCK",
    "REGION_IMPLS",
    "RegionLayout",
    "attention",
    "auto_region_impl",
    "build_region_layout",
    "dense_region_attention",
    "gather_rows",
    "matmul_form_is_faster",
    "packed_block_size",
    "region_attention",
    "region_attention_tokens",
    "region_block_mask",
    "region_impl_choice",
    "region_layout",
    "region_sequences",
    "varlen_unsupported",
    "wants_packed_layout",
]
