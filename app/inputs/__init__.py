"""From an HTTP upload to validated 3D images, one per modality: streaming uploads (``uploads``), archives
(``archives``), what a file is (``sniff``), NIfTI (``nifti``), DICOM series (``dicom``), and assembling a
study from them (``study``). A new input format is a reader module here and a branch in ``study``."""
