/*
 * Fused AES-128-CTR masking: vector[i] += sign_m * keystream_m[i] (mod 2**32) for k masks, in one
 * pass over the vector, with the keystream kept in registers (it never goes to memory).
 *
 * Bit-for-bit the same masks as the pure path (cryptography's AES-128-CTR: key = seed[:16],
 * initial counter block = seed[16:] XOR nonce, the 128-bit block incremented as a big-endian
 * integer, keystream read as little-endian uint32 words); tests/privacy/secagg/test_fastmask.py
 * compares the two for many lengths, signs, mask counts and counters that carry across 64 bits.
 *
 * AES itself is the CPU's: AES-NI (aesenc/aesenclast, 8 blocks in flight) or, where the CPU has
 * VAES with AVX-512, 4 blocks per instruction and 32 blocks in flight. Both are constant time.
 * Only the key schedule (aeskeygenassist, FIPS-197) and the counter arithmetic are written here.
 * Built by setuptools (pyproject.toml ext-modules, optional): with gcc/clang and Python headers
 * only; on other CPUs or compilers the module reports no support and the pure path runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define AI4HI_X86 1
#include <immintrin.h>
#endif

#ifdef AI4HI_X86

typedef struct {
    __m128i rk[11];
    uint64_t hi, lo; /* initial counter block as a 128-bit integer */
    int sub;
} mask_t;

#define TGT_AES __attribute__((target("aes,sse4.1,ssse3")))
#define TGT_VAES __attribute__((target("aes,sse4.1,ssse3,avx2,avx512f,avx512bw,vaes")))

#define EXPAND(i, rcon)                                        \
    do {                                                       \
        __m128i t = _mm_aeskeygenassist_si128(k, rcon);        \
        t = _mm_shuffle_epi32(t, 0xff);                        \
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));            \
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));            \
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));            \
        rk[i] = k = _mm_xor_si128(k, t);                       \
    } while (0)

TGT_AES static void expand128(const uint8_t *key, __m128i rk[11]) {
    __m128i k = _mm_loadu_si128((const __m128i *)key);
    rk[0] = k;
    EXPAND(1, 0x01); EXPAND(2, 0x02); EXPAND(3, 0x04); EXPAND(4, 0x08); EXPAND(5, 0x10);
    EXPAND(6, 0x20); EXPAND(7, 0x40); EXPAND(8, 0x80); EXPAND(9, 0x1b); EXPAND(10, 0x36);
}

static inline uint64_t load_be64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    return __builtin_bswap64(x);
}

/* counter block number j of a mask, as the 16 big-endian bytes AES encrypts */
TGT_AES static inline __m128i counter_block(const mask_t *m, uint64_t j) {
    uint64_t lo = m->lo + j, hi = m->hi + (lo < m->lo);
    return _mm_set_epi64x((long long)__builtin_bswap64(lo), (long long)__builtin_bswap64(hi));
}

TGT_AES static inline __m128i encrypt1(const mask_t *m, __m128i c) {
    c = _mm_xor_si128(c, m->rk[0]);
    for (int r = 1; r < 10; r++) c = _mm_aesenc_si128(c, m->rk[r]);
    return _mm_aesenclast_si128(c, m->rk[10]);
}

/* blocks [b, nfull) one at a time, then the last partial block (nwords % 4 words) */
TGT_AES static void tail(uint32_t *v, size_t nwords, size_t b, const mask_t *ms, int k) {
    size_t nfull = nwords / 4;
    for (; b < nfull; b++) {
        __m128i x = _mm_loadu_si128((const __m128i *)(v + 4 * b));
        for (int m = 0; m < k; m++) {
            __m128i ks = encrypt1(&ms[m], counter_block(&ms[m], b));
            x = ms[m].sub ? _mm_sub_epi32(x, ks) : _mm_add_epi32(x, ks);
        }
        _mm_storeu_si128((__m128i *)(v + 4 * b), x);
    }
    size_t rest = nwords - 4 * nfull;
    if (rest) {
        uint32_t buf[4] = {0, 0, 0, 0};
        memcpy(buf, v + 4 * nfull, rest * 4);
        __m128i x = _mm_loadu_si128((const __m128i *)buf);
        for (int m = 0; m < k; m++) {
            __m128i ks = encrypt1(&ms[m], counter_block(&ms[m], nfull));
            x = ms[m].sub ? _mm_sub_epi32(x, ks) : _mm_add_epi32(x, ks);
        }
        _mm_storeu_si128((__m128i *)buf, x);
        memcpy(v + 4 * nfull, buf, rest * 4);
    }
}

#define T1 8 /* AES-NI: blocks per tile */

TGT_AES static void run_aesni(uint32_t *v, size_t nwords, const mask_t *ms, int k) {
    /* 16 xmm registers without AVX: the 8 keystream blocks stay in registers, the 128-byte tile of
     * the vector stays in L1 across the masks (read and written once per mask, never to memory) */
    const __m128i bswap = _mm_set_epi8(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    size_t nfull = nwords / 4, b = 0;
    for (; b + T1 <= nfull; b += T1) {
        __m128i *x = (__m128i *)(v + 4 * b), c[T1];
        for (int m = 0; m < k; m++) {
            const mask_t *mk = &ms[m];
            uint64_t lo = mk->lo + b, hi = mk->hi + (lo < mk->lo);
            if (lo <= UINT64_MAX - (T1 - 1)) { /* no carry into the high half inside this tile */
                __m128i base = _mm_set_epi64x((long long)lo, (long long)hi); /* lanes: [hi, lo] */
                for (int i = 0; i < T1; i++)
                    c[i] = _mm_shuffle_epi8(_mm_add_epi64(base, _mm_set_epi64x(i, 0)), bswap);
            } else {
                for (int i = 0; i < T1; i++) c[i] = counter_block(mk, b + i);
            }
            for (int i = 0; i < T1; i++) c[i] = _mm_xor_si128(c[i], mk->rk[0]);
            for (int r = 1; r < 10; r++) {
                __m128i key = mk->rk[r];
                for (int i = 0; i < T1; i++) c[i] = _mm_aesenc_si128(c[i], key);
            }
            for (int i = 0; i < T1; i++) c[i] = _mm_aesenclast_si128(c[i], mk->rk[10]);
            if (mk->sub)
                for (int i = 0; i < T1; i++) _mm_storeu_si128(x + i, _mm_sub_epi32(_mm_loadu_si128(x + i), c[i]));
            else
                for (int i = 0; i < T1; i++) _mm_storeu_si128(x + i, _mm_add_epi32(_mm_loadu_si128(x + i), c[i]));
        }
    }
    tail(v, nwords, b, ms, k);
}

#define Z 8 /* VAES: zmm registers (4 blocks each) per tile: 32 blocks = 128 words */

TGT_VAES static void run_vaes(uint32_t *v, size_t nwords, const mask_t *ms, int k) {
    const __m512i bswap = _mm512_broadcast_i32x4(_mm_set_epi8(8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    const __m512i lane = _mm512_set_epi64(3, 0, 2, 0, 1, 0, 0, 0); /* +0..3 on the lo half of each block */
    const __m512i step = _mm512_set_epi64(4, 0, 4, 0, 4, 0, 4, 0);
    size_t nfull = nwords / 4, b = 0;
    for (; b + 4 * Z <= nfull; b += 4 * Z) {
        __m512i x[Z], c[Z];
        for (int i = 0; i < Z; i++) x[i] = _mm512_loadu_si512((const void *)(v + 4 * b + 16 * i));
        for (int m = 0; m < k; m++) {
            const mask_t *mk = &ms[m];
            uint64_t lo = mk->lo + b, hi = mk->hi + (lo < mk->lo);
            if (lo <= UINT64_MAX - (4 * Z - 1)) {
                __m512i ctr = _mm512_add_epi64(_mm512_broadcast_i32x4(_mm_set_epi64x((long long)lo, (long long)hi)), lane);
                for (int i = 0; i < Z; i++) {
                    c[i] = _mm512_shuffle_epi8(ctr, bswap);
                    ctr = _mm512_add_epi64(ctr, step);
                }
            } else {
                for (int i = 0; i < Z; i++) {
                    __m512i t = _mm512_castsi128_si512(counter_block(mk, b + 4 * i));
                    t = _mm512_inserti32x4(t, counter_block(mk, b + 4 * i + 1), 1);
                    t = _mm512_inserti32x4(t, counter_block(mk, b + 4 * i + 2), 2);
                    c[i] = _mm512_inserti32x4(t, counter_block(mk, b + 4 * i + 3), 3);
                }
            }
            __m512i key = _mm512_broadcast_i32x4(mk->rk[0]);
            for (int i = 0; i < Z; i++) c[i] = _mm512_xor_si512(c[i], key);
            for (int r = 1; r < 10; r++) {
                key = _mm512_broadcast_i32x4(mk->rk[r]);
                for (int i = 0; i < Z; i++) c[i] = _mm512_aesenc_epi128(c[i], key);
            }
            key = _mm512_broadcast_i32x4(mk->rk[10]);
            for (int i = 0; i < Z; i++) c[i] = _mm512_aesenclast_epi128(c[i], key);
            if (mk->sub)
                for (int i = 0; i < Z; i++) x[i] = _mm512_sub_epi32(x[i], c[i]);
            else
                for (int i = 0; i < Z; i++) x[i] = _mm512_add_epi32(x[i], c[i]);
        }
        for (int i = 0; i < Z; i++) _mm512_storeu_si512((void *)(v + 4 * b + 16 * i), x[i]);
    }
    _mm256_zeroupper(); /* the tail is legacy SSE (see clear_upper) */
    tail(v, nwords, b, ms, k); /* continues the same keystreams at block b */
}

/* Legacy-SSE code after AVX code that left the upper halves of the vector registers dirty pays a
 * state-transition penalty on every instruction (measured here: the AES-NI path at half speed after
 * any AVX-512 code, e.g. numpy's, ran in the same thread). vzeroupper clears that state. */
__attribute__((target("avx"))) static void clear_upper(void) { _mm256_zeroupper(); }

static int has_aesni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("ssse3");
}

static int has_vaes512(void) {
    __builtin_cpu_init();
    return has_aesni() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("vaes");
}

#endif /* AI4HI_X86 */

/* apply(vector, keys, counters, signs, impl) -- impl: "auto", "aesni" or "vaes512" */
static PyObject *fm_apply(PyObject *self, PyObject *args) {
    Py_buffer vec, keys, ctrs, signs;
    const char *impl = "auto";
    if (!PyArg_ParseTuple(args, "w*y*y*y*|s", &vec, &keys, &ctrs, &signs, &impl)) return NULL;
    PyObject *result = NULL;
#ifdef AI4HI_X86
    Py_ssize_t k = signs.len;
    int use_vaes, has_avx = __builtin_cpu_supports("avx");
    mask_t *ms, *aligned;
    if (vec.len % 4 != 0 || !PyBuffer_IsContiguous(&vec, 'C')) {
        PyErr_SetString(PyExc_ValueError, "vector must be a contiguous buffer of uint32 words");
        goto done;
    }
    if (keys.len != 16 * k || ctrs.len != 16 * k || k > 1000000) {
        PyErr_SetString(PyExc_ValueError, "need 16 key bytes and 16 counter bytes per mask");
        goto done;
    }
    if (strcmp(impl, "auto") == 0) {
        if (!has_aesni()) { PyErr_SetString(PyExc_RuntimeError, "no AES-NI on this CPU"); goto done; }
        use_vaes = has_vaes512();
    } else if (strcmp(impl, "aesni") == 0) {
        if (!has_aesni()) { PyErr_SetString(PyExc_RuntimeError, "no AES-NI on this CPU"); goto done; }
        use_vaes = 0;
    } else if (strcmp(impl, "vaes512") == 0) {
        if (!has_vaes512()) { PyErr_SetString(PyExc_RuntimeError, "no VAES/AVX-512 on this CPU"); goto done; }
        use_vaes = 1;
    } else {
        PyErr_SetString(PyExc_ValueError, "impl must be auto, aesni or vaes512");
        goto done;
    }
    ms = PyMem_Malloc(sizeof(mask_t) * (k ? k : 1) + 64);
    if (!ms) { PyErr_NoMemory(); goto done; }
    aligned = (mask_t *)(((uintptr_t)ms + 63) & ~(uintptr_t)63);
    const uint8_t *kb = keys.buf, *cb = ctrs.buf, *sb = signs.buf;
    if (has_avx) clear_upper();
    for (Py_ssize_t m = 0; m < k; m++) {
        expand128(kb + 16 * m, aligned[m].rk);
        aligned[m].hi = load_be64(cb + 16 * m);
        aligned[m].lo = load_be64(cb + 16 * m + 8);
        aligned[m].sub = sb[m] != 1;
    }
    Py_BEGIN_ALLOW_THREADS
    if (k > 0) {
        if (use_vaes) {
            run_vaes((uint32_t *)vec.buf, (size_t)(vec.len / 4), aligned, (int)k);
        } else {
            run_aesni((uint32_t *)vec.buf, (size_t)(vec.len / 4), aligned, (int)k);
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(ms);
    Py_INCREF(Py_None);
    result = Py_None;
done:
#else
    PyErr_SetString(PyExc_RuntimeError, "fused masking needs an x86 CPU with AES-NI");
#endif
    PyBuffer_Release(&vec);
    PyBuffer_Release(&keys);
    PyBuffer_Release(&ctrs);
    PyBuffer_Release(&signs);
    return result;
}

static PyObject *fm_features(PyObject *self, PyObject *noargs) {
#ifdef AI4HI_X86
    return Py_BuildValue("{s:O,s:O}", "aesni", has_aesni() ? Py_True : Py_False, "vaes512",
                         has_vaes512() ? Py_True : Py_False);
#else
    return Py_BuildValue("{s:O,s:O}", "aesni", Py_False, "vaes512", Py_False);
#endif
}

static PyMethodDef methods[] = {
    {"apply", fm_apply, METH_VARARGS,
     "apply(vector, keys, counters, signs, impl='auto'): vector += sum(sign * AES-128-CTR keystream), in place"},
    {"features", fm_features, METH_NOARGS, "which fused paths this CPU supports"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastmask",
                                    "Fused AES-128-CTR masking (see the C source's header).", -1, methods};

PyMODINIT_FUNC PyInit__fastmask(void) { return PyModule_Create(&module); }
