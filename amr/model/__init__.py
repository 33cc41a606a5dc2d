"""The retrieval models: what turns item and query into one vector each.

amr.model.text_input and amr.model.fusion (light vocabularies: text
normalisation, fusion modes), amr.model.text (the text encoder),
amr.model.heads (the fusion heads), amr.model.model (the trained model of
Primus & Widmer), amr.model.checkpoint (its on-disk format and retriever),
amr.model.zeroshot (the untrained hybrid), amr.model.retrievers (the
protocol the index, query and evaluate stages consume), and
amr.model.query_encoder (the query side exported to ONNX). Nothing is
imported here, so that the light modules stay light.
"""
