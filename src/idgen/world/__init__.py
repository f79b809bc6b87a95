"""The demo world: a procedural renderer of people in scenes, its captions and tokenizer.

Everything here is deterministic and CPU-only (numpy, PIL, tokenizers):

- `render.py`: `Identity` (11 attributes), `Scene` (background, clothing colour, lighting, framing,
  position), `render` / `render_reference` -> `Render` (64x64 image, exact face mask, labels, face box),
  the fixed identity split `train_identities` / `test_identities`.
- `captions.py`: the caption grammar, `VOCABULARY`, held-out evaluation prompts.
- `tokenizer.py`: the word-level tokenizer, saved as a standard tokenizer.json.
- `preview.py`: contact sheets (`python -m idgen.world.preview /tmp`).

Note: `idgen.world.render` is the re-exported *function*; import the module's other names with
`from idgen.world.render import ...` (or use `sys.modules["idgen.world.render"]`).
"""

from typing import TYPE_CHECKING, Any

from idgen.world.backgrounds import BACKDROP_NAMES, REFERENCE_BACKDROPS
from idgen.world.captions import (
    DEMO_PROMPT,
    HELD_OUT_PAIRS,
    VOCABULARY,
    Prompt,
    canonical_caption,
    caption,
    is_held_out,
    random_train_scene,
    scene_words,
    test_prompts,
    train_captions,
    words,
)
from idgen.world.render import (
    ATTRIBUTES,
    BACKGROUNDS,
    CLOTHING_COLOURS,
    CLOTHING_NAMES,
    FACE_LABELS,
    FRAMINGS,
    IDENTITY_CODE_SIZE,
    LABEL_NAMES,
    LIGHTING_NAMES,
    LIGHTINGS,
    NUM_COMBINATIONS,
    POSITIONS,
    SIZE,
    Identity,
    Render,
    Scene,
    identity_code,
    reference_choice,
    render,
    render_reference,
    test_identities,
    train_identities,
)
from idgen.world.tokenizer import MODEL_MAX_LENGTH, build_tokenizer, save_tokenizer, unknown_words

if TYPE_CHECKING:
    from idgen.world.preview import contact_sheet, mask_overlay


def __getattr__(name: str) -> Any:
    # The preview helpers load on first use: `python -m idgen.world.preview` must not find the module
    # already imported by this package (runpy warns), and plain rendering needs no PIL.
    if name in ("contact_sheet", "mask_overlay"):
        from idgen.world import preview

        return getattr(preview, name)
    raise AttributeError(f"module 'idgen.world' has no attribute {name!r}")


__all__ = [
    "ATTRIBUTES",
    "BACKDROP_NAMES",
    "BACKGROUNDS",
    "CLOTHING_COLOURS",
    "CLOTHING_NAMES",
    "DEMO_PROMPT",
    "FACE_LABELS",
    "FRAMINGS",
    "HELD_OUT_PAIRS",
    "IDENTITY_CODE_SIZE",
    "LABEL_NAMES",
    "LIGHTINGS",
    "LIGHTING_NAMES",
    "MODEL_MAX_LENGTH",
    "NUM_COMBINATIONS",
    "POSITIONS",
    "REFERENCE_BACKDROPS",
    "SIZE",
    "VOCABULARY",
    "Identity",
    "Prompt",
    "Render",
    "Scene",
    "build_tokenizer",
    "canonical_caption",
    "caption",
    "contact_sheet",
    "identity_code",
    "is_held_out",
    "mask_overlay",
    "random_train_scene",
    "reference_choice",
    "render",
    "render_reference",
    "save_tokenizer",
    "scene_words",
    "test_identities",
    "test_prompts",
    "train_captions",
    "train_identities",
    "unknown_words",
    "words",
]
