"""PuLID-FLUX's identity-photo preprocessing, restated step by step for the tests and the benchmark.

A re-statement of the reference arithmetic, kept apart from idgen's implementation: PuLID's
app_flux.py (resize_numpy_image_long(id_image, 1024)) and pipeline_flux.py get_id_embedding, which
calls facexlib's FaceRestoreHelper(upscale_factor=1, face_size=512, crop_ratio=(1, 1)):
read_image, get_face_landmarks_5(only_center_face=True), align_warp_face().
"""

from __future__ import annotations

import cv2
import numpy as np

# facexlib's standard 5 landmarks for FFHQ faces at 512 x 512 (eyes, nose tip, mouth corners).
TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)


def resize_numpy_image_long(image: np.ndarray, resize_long_edge: int = 1024) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= resize_long_edge:
        return image
    k = resize_long_edge / max(h, w)
    h = int(h * k)
    w = int(w * k)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LANCZOS4)


def center_face(det_faces: np.ndarray, h: int, w: int) -> int:
    center = np.array([w / 2, h / 2])
    dist = [np.linalg.norm(np.array([(d[0] + d[2]) / 2, (d[1] + d[3]) / 2]) - center) for d in det_faces]
    return dist.index(min(dist))


def largest_antelope_face(bboxes: np.ndarray) -> int:
    order = sorted(
        range(len(bboxes)), key=lambda i: (bboxes[i][2] - bboxes[i][0]) * (bboxes[i][3] - bboxes[i][1])
    )
    return order[-1]


def align_warp_face(
    image_bgr: np.ndarray, det_faces: np.ndarray, face_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(cropped face, affine) of the centre face; det_faces rows as RetinaFace's: box, score, 5 x (x, y)."""
    template = TEMPLATE_512 * (face_size / 512.0)
    h, w = image_bgr.shape[:2]
    bbox = det_faces[center_face(det_faces, h, w)]
    landmark = np.array([[bbox[i], bbox[i + 1]] for i in range(5, 15, 2)])
    affine = cv2.estimateAffinePartial2D(landmark, template, method=cv2.LMEDS)[0]
    cropped = cv2.warpAffine(
        image_bgr, affine, (face_size, face_size), borderMode=cv2.BORDER_CONSTANT, borderValue=(135, 133, 132)
    )
    return cropped, affine


def crop_of_photo(rgb: np.ndarray, det_faces_on_resized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole reference path from an RGB photo: resize, RGB->BGR, centre face, align, warp."""
    image = resize_numpy_image_long(rgb, 1024)
    image_bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return align_warp_face(image_bgr, det_faces_on_resized)
