package s3

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

func TestPartSize(t *testing.T) {
	const MiB = 1 << 20
	for _, tc := range []struct {
		base int64
		n    int
		want int64
	}{
		{16 * MiB, 1, 16 * MiB},
		{16 * MiB, 1000, 16 * MiB},
		{16 * MiB, 1001, 32 * MiB},
		{16 * MiB, 2000, 32 * MiB},
		{16 * MiB, 2001, 64 * MiB},
		{16 * MiB, 9001, 5 << 30}, // 8 GiB, capped
		{5 * MiB, 10_000, 2560 * MiB},
		{5 << 30, 1, 5 << 30},
		{5 << 30, 5000, 5 << 30},
	} {
		if got := partSize(tc.base, tc.n); got != tc.want {
			t.Errorf("partSize(%d MiB, %d) = %d MiB, want %d MiB", tc.base/MiB, tc.n, got/MiB, tc.want/MiB)
		}
	}

	// 10,000 parts hold S3's largest object (5 TiB) from the default part
	// size, and nearly so from the smallest; a 100 GiB stream needs no
	// more than 64 MiB parts.
	for _, tc := range []struct{ base, want int64 }{{5 * MiB, 4900 << 30}, {DefaultPartSize, 5 << 40}} {
		var total int64
		for n := 1; n <= maxParts; n++ {
			total += partSize(tc.base, n)
		}
		if total < tc.want {
			t.Errorf("from %d MiB parts, 10,000 parts hold only %d GiB, want %d GiB", tc.base/MiB, total>>30, tc.want>>30)
		}
	}
	var total int64
	n := 1
	for ; total < 100<<30; n++ {
		total += partSize(DefaultPartSize, n)
	}
	if got := partSize(DefaultPartSize, n-1); got > 64*MiB {
		t.Errorf("a 100 GiB stream ends with %d MiB parts", got/MiB)
	}
}

// TestCompositeCRC: the composite checksum of a two-part upload, as
// MinIO reported it for parts with these CRC32Cs.
func TestCompositeCRC(t *testing.T) {
	parts := []types.CompletedPart{
		{PartNumber: aws.Int32(1), ChecksumCRC32C: aws.String("WpuOeg==")},
		{PartNumber: aws.Int32(2), ChecksumCRC32C: aws.String("B21LrQ==")},
	}
	if got, want := compositeCRC(parts), "KYE/qQ==-2"; got != want {
		t.Errorf("compositeCRC = %q, want %q", got, want)
	}
}
