"""The easy-VQA scene world (SYNTHETIC): one coloured shape on a light background, its text, and more of it.

A concept of its own, below :mod:`amad.data` and :mod:`amad.metrics` (both read it; it reads neither):

* :mod:`~amad.scenes.easyvqa_source`: the images and questions the ``easy-vqa`` wheel ships;
* :mod:`~amad.scenes.attributes`: the shapes, colours, sizes and positions, and the reader that finds
  them in an image's pixels (:class:`~amad.scenes.attributes.ShapeAttributes`);
* :mod:`~amad.scenes.captions`: English captions and their German translations of those attributes;
* :mod:`~amad.scenes.text`: the easy-VQA questions and answers of a scene, and its question kinds;
* :mod:`~amad.scenes.generator`: draws new scenes as the package drew its images, a pure function of
  ``(seed, index)``;
* :mod:`~amad.scenes.datasets`: training examples on generated scenes (teachers' pre-training only);
* :mod:`~amad.scenes.report`: how generated scenes compare with the package's images
  (``python -m amad.scenes.report``).

Data card: ``docs/datasets.md``. Nothing is imported here: each module is imported where it is used.
"""
