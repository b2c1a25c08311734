"""Arrays in, figures out, no torch: the LUNA16 FROC/CPM with bootstrap intervals, the classifier
metrics (one function, one set of key names), suppression of near neighbours, and the
evaluation of results files that ``luna evaluate`` prints."""
