"""The PACS integration: a DICOMweb client (QIDO/WADO/STOW-RS) and a DICOM C-STORE listener."""
