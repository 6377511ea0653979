"""cnnviz.labels: the ImageNet class index (data/imagenet_classes.tsv) against torchvision, and
classes named as people name them."""

from __future__ import annotations

import pytest

from cnnviz.labels import imagenet_classes, label_name, label_names


def test_class_index_agrees_with_torchvision_and_wordnet_ids_are_unique():
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    classes = imagenet_classes()
    assert [c.name for c in classes] == list(_IMAGENET_CATEGORIES)
    assert [c.index for c in classes] == list(range(1000))
    assert len({c.wnid for c in classes}) == 1000
    assert all(c.wnid[0] == "n" and len(c.wnid) == 9 and c.wnid[1:].isdigit() for c in classes)
    # the three best-known rows, as in every published ImageNet class index
    assert (classes[0].wnid, classes[0].name) == ("n01440764", "tench")
    assert (classes[281].wnid, classes[281].name) == ("n02123045", "tabby")
    assert (classes[999].wnid, classes[999].name) == ("n15075141", "toilet tissue")


def test_label_names():
    names = [f"class {i}" for i in range(1000)]
    assert label_name("n02123045") == "tabby"
    assert label_name("n02123045_cats") == "tabby"  # a folder named after its WordNet id
    assert label_name("n02123045", names) == "class 281"  # the model's own name for that class
    assert label_name("3", names) == "class 3"
    assert label_name("3") is None and label_name("cat", names) is None and label_name("") is None
    assert label_name("n99999999") is None  # not an ImageNet-1k class
    assert label_names(["7", "n01440764", None], names) == ["class 7", "class 0", None]


def test_classes_named_as_people_name_them():
    """Every class of torchvision's ImageNet names by its own name (unless two classes share it)
    and by its WordNet id; numbers, ranges and names mix; a name that fits several classes or none
    is refused with the candidates."""
    from collections import Counter

    from torchvision.models._meta import _IMAGENET_CATEGORIES as names

    from cnnviz.errors import UsageError
    from cnnviz.labels import class_indices

    shared = {n for n, k in Counter(n.lower() for n in names).items() if k > 1}
    for i, (name, cls) in enumerate(zip(names, imagenet_classes(), strict=True)):
        assert class_indices(cls.wnid, names) == [i]
        if name.lower() not in shared:
            assert class_indices(name.upper(), names) == [i], name
    assert class_indices("76, 130-132,zebra", names) == [76, 130, 131, 132, 340]
    assert class_indices("tabby cat", names) == [281]  # a WordNet lemma of 281 'tabby'
    for spec, message in (("cat", "fits several classes: "), ("zebraa", "did you mean 'zebra'"),
                          (sorted(shared)[0], "fits several classes"), ("1000", "out of range"),
                          (" , ", "name at least one class")):
        with pytest.raises(UsageError, match=message):
            class_indices(spec, names)
    with pytest.raises(UsageError, match="no class names; give class indices"):
        class_indices("zebra", None)
