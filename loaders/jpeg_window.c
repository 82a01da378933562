/* segshards.loaders._jpeg_window: one window of a JPEG decoded by libjpeg-turbo, and nothing else.
 *
 * An augmented photograph keeps a random crop of its resized image: about half of the decoded pixels on
 * coco-tiny-derived photographs. libjpeg-turbo can skip the colour conversion, upsampling and inverse DCT
 * of the columns outside a window (jpeg_crop_scanline) and of the rows above and below it
 * (jpeg_skip_scanlines), which are entropy-decoded only: ~15% fewer instructions than a whole decode on
 * 150 coco-tiny-derived draws of `Augment()` (callgrind). The rows below are entropy-decoded, rather than
 * left unread (~20% fewer), so that damage anywhere is found whatever the window. Neither simplejpeg nor
 * OpenCV exposes that, so this is the smallest binding that does: the pixels are libjpeg-turbo's, bit for
 * bit those of a whole decode at the same scale (tests/test_jpeg_window.py holds it).
 *
 * Any libjpeg error or warning (corrupt data included) raises ValueError, and the caller decodes the JPEG
 * whole through its usual path instead, so damaged input meets the same rules as before. The GIL is
 * released while decoding.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

#if !defined(LIBJPEG_TURBO_VERSION_NUMBER) || LIBJPEG_TURBO_VERSION_NUMBER < 1005000
#error "segshards' window decode needs libjpeg-turbo >= 1.5 (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf escape;
    char message[JMSG_LENGTH_MAX];
} Failure;

static void fail(j_common_ptr cinfo) {
    Failure *failure = (Failure *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, failure->message);
    longjmp(failure->escape, 1);
}

/* Warnings (level -1: corrupt data libjpeg would paper over) fail too, as simplejpeg's strict mode does;
 * trace messages (level >= 0) are dropped. */
static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) fail(cinfo);
}

typedef struct {
    int denominator, top, bottom, left, right;
} Window;

/* YCbCr with full-resolution chroma or chroma halved across, down or both (4:4:4, 4:2:2, 4:4:0, 4:2:0)
 * or quartered across (4:1:1): libjpeg-turbo 2.1's crop gave other pixels than its whole decode with luma
 * sampled 4x2 or 2x4 over chroma, so those go to the whole decode. */
static int common_sampling(const struct jpeg_decompress_struct *cinfo) {
    if (cinfo->num_components != 3) return 0;
    const jpeg_component_info *c = cinfo->comp_info;
    for (int i = 1; i < 3; i++)
        if (c[i].h_samp_factor != 1 || c[i].v_samp_factor != 1) return 0;
    int h = c[0].h_samp_factor, v = c[0].v_samp_factor;
    return (h <= 2 && v <= 2) || (h == 4 && v == 1);
}

/* Whether libjpeg-turbo smooths blocks: a progressive JPEG whose scans leave some of the first coefficients
 * short of full precision. The smoothing reads neighbouring blocks, and takes a crop's edge for the
 * image's. */
static int smoothed(const struct jpeg_decompress_struct *cinfo) {
    if (!cinfo->progressive_mode || cinfo->coef_bits == NULL) return 0;
    for (int c = 0; c < cinfo->num_components; c++)
        for (int k = 0; k < 10; k++)
            if (cinfo->coef_bits[c][k] != 0) return 1;
    return 0;
}

/* Decode `window` of `data` at 1/denominator into `out` (rows x columns x 3 BGR, C order). Returns NULL,
 * or the reason it did not; `failure->message` holds libjpeg's own words. */
static const char *decode(const unsigned char *data, size_t size, Window window, unsigned char *out,
                          Failure *failure) {
    struct jpeg_decompress_struct cinfo;
    const char *volatile reason = NULL;
    JSAMPARRAY rows = NULL;
    int group = 1;
    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&failure->pub);
    failure->pub.error_exit = fail;
    failure->pub.emit_message = on_message;
    if (setjmp(failure->escape)) {
        jpeg_destroy_decompress(&cinfo); /* frees what was allocated, nothing if none was */
        return failure->message;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)window.denominator;
    cinfo.out_color_space = JCS_EXT_BGR;
    jpeg_start_decompress(&cinfo); /* a progressive JPEG is read whole here, its damage found here */
    if (window.bottom > (int)cinfo.output_height || window.right > (int)cinfo.output_width ||
        cinfo.output_components != 3) {
        reason = "window outside the decoded image";
    } else if (!common_sampling(&cinfo)) {
        reason = "chroma sampling the window decode leaves to a whole decode";
    } else if (smoothed(&cinfo)) {
        reason = "a progressive JPEG whose scans stop short: block smoothing sees the crop's edge";
    } else {
        /* A decoded column to the left and an iMCU and a column to the right, where there are: the fancy
         * upsampler reads its neighbours, and a window edge on an iMCU boundary, or a crop narrower than an
         * iMCU, would otherwise differ from a whole decode at its edge column (tests/test_jpeg_window.py). */
        int imcu = cinfo.max_h_samp_factor * cinfo.min_DCT_scaled_size;
        JDIMENSION left = window.left > 0 ? (JDIMENSION)window.left - 1 : 0;
        JDIMENSION right = (JDIMENSION)window.right + 1 + (JDIMENSION)imcu;
        if (right > cinfo.output_width) right = cinfo.output_width;
        JDIMENSION width = right - left;
        jpeg_crop_scanline(&cinfo, &left, &width);
        size_t shift = (size_t)(window.left - (int)left) * 3, row_bytes = (size_t)(window.right - window.left) * 3;
        /* An iMCU row of rows per call, as a whole decode reads them (a row at a time, the 2x2 upsampler
         * goes through its spare row). */
        group = cinfo.max_v_samp_factor * cinfo.min_DCT_scaled_size;
        rows = (*cinfo.mem->alloc_sarray)((j_common_ptr)&cinfo, JPOOL_IMAGE, width * 3, (JDIMENSION)group);
        if (window.top > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)window.top);
        for (int y = window.top; y < window.bottom && reason == NULL;) {
            int got = (int)jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)group);
            if (got < 1) reason = "the decoder gave no row";
            for (int i = 0; i < got && y < window.bottom; i++, y++)
                memcpy(out + (size_t)(y - window.top) * row_bytes, rows[i] + shift, row_bytes);
        }
    }
    if (reason == NULL) {
        /* The rows below the window entropy-decoded only (skipped: no inverse DCT, upsampling or colour), and
         * the stream read to its end: damage anywhere in the JPEG is refused, as a whole decode refuses it,
         * whatever the window. Skipping to the very end would decode nothing, so the last row is read. */
        JDIMENSION below = cinfo.output_height - cinfo.output_scanline;
        if (below > 1) jpeg_skip_scanlines(&cinfo, below - 1);
        while (cinfo.output_scanline < cinfo.output_height)
            if (jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)group) < 1) { /* never, from memory: no hang */
                reason = "the decoder gave no row";
                break;
            }
        if (reason == NULL) jpeg_finish_decompress(&cinfo);
    }
    jpeg_destroy_decompress(&cinfo);
    return reason;
}

static PyObject *decode_window(PyObject *self, PyObject *args) {
    Py_buffer data, out;
    Window w;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*iiiiiw*", &data, &w.denominator, &w.top, &w.bottom, &w.left, &w.right,
                          &out))
        return NULL;
    const char *reason = NULL;
    if (w.denominator != 1 && w.denominator != 2 && w.denominator != 4 && w.denominator != 8)
        reason = "denominator must be 1, 2, 4 or 8";
    else if (w.top < 0 || w.left < 0 || w.bottom <= w.top || w.right <= w.left)
        reason = "empty or negative window";
    else if (!PyBuffer_IsContiguous(&out, 'C') ||
             out.len != (Py_ssize_t)(w.bottom - w.top) * (w.right - w.left) * 3)
        reason = "out must be a C-contiguous buffer of the window's rows x columns x 3 bytes";
    Failure failure;
    if (reason == NULL) {
        Py_BEGIN_ALLOW_THREADS
        reason = decode((const unsigned char *)data.buf, (size_t)data.len, w, (unsigned char *)out.buf, &failure);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    if (reason != NULL) {
        PyErr_SetString(PyExc_ValueError, reason);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode_window", decode_window, METH_VARARGS,
     "decode_window(data, denominator, top, bottom, left, right, out): rows [top, bottom) and columns "
     "[left, right) of a JPEG decoded at 1/denominator, written into `out` as BGR; ValueError on any "
     "libjpeg error or warning."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_jpeg_window", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__jpeg_window(void) { return PyModule_Create(&module); }
