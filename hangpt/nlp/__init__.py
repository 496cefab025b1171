"""The classic NLP layer of the course, before transformers: Korean morphology (kiwipiepy), word
frequencies and word clouds, TF-IDF (scikit-learn), word2vec (gensim) and the NSMC baselines built
on them. One small module per concept; each imports its library only when used, so `hangpt nlp
--help` stays fast.
"""
