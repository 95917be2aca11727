package bench

import "encoding/binary"

// walHeader builds a WAL long page header.
func walHeader(magic uint16, tli uint32, pageAddr, sysID uint64, segSize uint32) []byte {
	h := make([]byte, 40)
	binary.LittleEndian.PutUint16(h[0:], magic)
	binary.LittleEndian.PutUint16(h[2:], 0x0002)
	binary.LittleEndian.PutUint32(h[4:], tli)
	binary.LittleEndian.PutUint64(h[8:], pageAddr)
	binary.LittleEndian.PutUint64(h[24:], sysID)
	binary.LittleEndian.PutUint32(h[32:], segSize)
	binary.LittleEndian.PutUint32(h[36:], 8192)
	return h
}
