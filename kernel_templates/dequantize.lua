-- Blockwise dequantize, one work-group per block: out[i] = map[codes[i]] * absmax[block].
-- Kernel arguments: const GLOBAL aj_u8* codes, const GLOBAL float* absmax,
--   const GLOBAL float* map   (256 values), GLOBAL T* out, aj_size n.
-- Launch: ceil(n / block) work-groups of wg threads; the last block may be partial.
emitf([==[
#define AJ_WG ${wg}
#define AJ_BLOCK ${block}
KERNEL void ${kernel_name}(const GLOBAL aj_u8* RESTRICT codes, const GLOBAL float* RESTRICT absmax,
    const GLOBAL float* RESTRICT map, GLOBAL aj_${p}_t* RESTRICT out, aj_size n) {
  LOCAL float q[256];
  const int lid = LOCAL_ID;
  const aj_size b0 = GROUP_ID * (aj_size)AJ_BLOCK;
  const int len = (int)(n - b0 < (aj_size)AJ_BLOCK ? n - b0 : (aj_size)AJ_BLOCK);
  for (int j = lid; j < 256; j += AJ_WG) q[j] = map[j];
  BARRIER;
  const float scale = absmax[GROUP_ID];
  for (int j = lid; j < len; j += AJ_WG) {
    const aj_size i = b0 + (aj_size)j;
    aj_store_${p}(out, i, q[codes[i]] * scale);
  }
}
]==])
