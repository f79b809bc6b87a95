"""`idgen eval`: the IBench protocol as a resumable, sharded harness.

manifest  what to generate: identity photos x prompts x a seed policy (IBench json, folders, built-ins)
models    the metric model interfaces (image-text, face, image scorer) that real and demo models implement
metrics   the metric maths on embeddings and pixels (plain torch)
backends  real metric models (CLIP ViT-L/14, antelopev2, dlib, LAION aesthetic, MUSIQ) and the demo world's
runner    generation and scoring, atomic per image, resumable, sharded with accelerate
report    markdown table with 95% CIs, plots, a static HTML grid
"""
