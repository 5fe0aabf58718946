"""Bundled smoke image questions: each image is drawn with PIL from its row, so the answer is known."""

from PIL import Image, ImageDraw

SIZE = 336


def doc_to_visual(doc):
    image = Image.new("RGB", (SIZE, SIZE), "lightgray" if doc["color"] == "white" else "white")
    draw = ImageDraw.Draw(image)
    box = (SIZE // 4, SIZE // 4, 3 * SIZE // 4, 3 * SIZE // 4)
    if doc["shape"] == "circle":
        draw.ellipse(box, fill=doc["color"])
    elif doc["shape"] == "triangle":
        draw.polygon([(SIZE // 2, SIZE // 4), (SIZE // 4, 3 * SIZE // 4), (3 * SIZE // 4, 3 * SIZE // 4)], fill=doc["color"])
    else:
        draw.rectangle(box, fill=doc["color"])
    return [image]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def process_results(doc, results):
    prediction, gold = results[0].strip().lower(), doc["answer"].lower()
    return {"exact_match": float(prediction.rstrip(".") == gold), "contains": float(gold in prediction)}
