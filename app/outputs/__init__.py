"""From a mask to an answer: one writer module per format and the table of formats (``formats``)."""
